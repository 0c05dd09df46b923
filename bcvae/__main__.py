import sys

from bcvae.cli import main

sys.exit(main())
