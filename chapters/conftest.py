"""pytest settings for the notebooks (strict nbval).

Chapter 11 runs on the real Qwen2.5-VL-3B-Instruct weights when it finds them, and on a stand-in
checkpoint otherwise. The outputs stored in the notebook are the stand-in's, so under pytest it
always takes the stand-in, even on a machine that has downloaded the real weights.
"""

import os

os.environ["QVL_STANDIN"] = "1"  # inherited by the notebook kernels that nbval starts
