import sys

from kestrel_raw.cli import main

sys.exit(main())
