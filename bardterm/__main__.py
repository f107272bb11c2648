import sys

from bardterm.cli import main

sys.exit(main())
