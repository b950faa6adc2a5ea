"""``--model NAME`` -> constructor, as in timm: every entry script looks models up here."""
import inspect

from utils.errors import UserError

_MODELS = {}


def register(name, task, max_layers=None):
    """Register a factory ``f(num_classes, **config) -> nn.Module`` under ``name``; ``max_layers``
    declares how many weighted layers its deployed form may run (checked by test_rrdb.py)."""
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = (fn, task, max_layers)
        return fn
    return deco


def list_models(task=None):
    return sorted(n for n, (_, t, _) in _MODELS.items() if task in (None, t))


def model_task(name):
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _MODELS[name][1]


def max_layers(name):
    model_task(name)
    return _MODELS[name][2]


def resolved_config(name, **config):
    """``config`` with every option it leaves out at the value the factory gives it."""
    model_task(name)
    params = inspect.signature(_MODELS[name][0]).parameters
    return {**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **config}


def create_model(name, num_classes, **config):
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    factory = _MODELS[name][0]
    unknown = [k for k in config if k not in inspect.signature(factory).parameters]
    if unknown:
        raise UserError(f"model {name!r} has no option {unknown[0]!r}")
    return factory(num_classes=num_classes, **config)
