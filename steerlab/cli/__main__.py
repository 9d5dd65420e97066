"""`python -m steerlab.cli ...` runs the command line."""

from . import main

main()
