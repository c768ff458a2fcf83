import os
import sys
from pathlib import Path

# Tests run on the CPU; multi-device tests spawn their own processes with the device count set.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
