"""Analysis of IMP results: reads result files and masks, never a live trainer."""
from .input_mask import (ImageInputSurvival, InputDimSurvival, image_input_survival, input_dim_survival,
                         plot_image_survival, plot_input_dim_survival, write_table)

__all__ = ["InputDimSurvival", "ImageInputSurvival", "input_dim_survival", "image_input_survival",
           "plot_image_survival", "plot_input_dim_survival", "write_table"]
