"""``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR``."""

import sys

from vitdex.training.dreambooth.loop import main

sys.exit(main())
