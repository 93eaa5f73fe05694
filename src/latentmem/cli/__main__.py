import sys

from latentmem.cli import main

sys.exit(main())
