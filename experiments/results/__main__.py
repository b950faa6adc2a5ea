import sys

from experiments.results import main

sys.exit(main())
