"""Write example_cond_unet.npz: 4 conditioning rows for the tests' tiny UNet2DConditionModel."""

import os

import numpy as np

rng = np.random.default_rng(0)
np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_cond_unet.npz"),
         encoder_hidden_states=rng.standard_normal((4, 8, 16)).astype(np.float32))
