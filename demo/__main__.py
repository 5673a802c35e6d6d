"""``python -m xhub.demo``: the demo story (see ``xhub.demo.story``)."""

import os
import sys

from xhub.demo.story import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
