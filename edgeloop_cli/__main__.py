import sys

from edgeloop_cli import main

sys.exit(main())
