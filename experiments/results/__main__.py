import sys

from experiments.results import main
from experiments.results.jobs import forward_stop_signals

forward_stop_signals()  # the command's own process only: not when a test calls main()
sys.exit(main())
