"""Puts the repository root on `sys.path`, so that a benchmark run as `python benchmarks/<name>.py` imports the
tests' loop references (`tests.references`) as the tests do. Import it before `tests.references`:

    import repo_root  # noqa: F401
    from tests.references import loop_pyramid_targets
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
