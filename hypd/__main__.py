import sys

from hypd.cli import main

sys.exit(main())
