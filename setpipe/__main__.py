import sys

from setpipe.cli import main

sys.exit(main())
