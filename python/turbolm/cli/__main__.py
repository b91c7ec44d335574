"""`python -m turbolm.cli ...` is `turbolm ...` (bench starts its backends this way)."""
from turbolm.cli import main

main()
