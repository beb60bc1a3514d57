"""Where ../shared/bench is: beside the project root, or beside the folder
holding a git worktree of it (one level deeper)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = next((p / "shared" / "bench" for p in (ROOT.parent, ROOT.parents[1]) if (p / "shared" / "bench").is_dir()),
             ROOT.parent / "shared" / "bench")
