"""`python export.py --checkpoint CKPT --out DIR`: export an adapter checkpoint (see mmadapter.export.cli)."""
import sys

from mmadapter.export.cli import main

sys.exit(main())
