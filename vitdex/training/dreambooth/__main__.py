"""``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR``."""

import sys

from vitdex.training.determinism import reproducible_cpu_math

# Before torch is imported and computes anything (see vitdex.training.determinism).
reproducible_cpu_math()

from vitdex.training.dreambooth.loop import main  # noqa: E402

sys.exit(main())
