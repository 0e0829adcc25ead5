"""`python benchmarks/run.py [options]` = `jaxdn bench [options]` (the same suite, `jaxdn.bench`)."""
import sys

from jaxdn.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
