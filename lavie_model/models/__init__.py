from .unet_3d import UNet3DConditionModel, UNet3DConditionOutput, config_from_2d
from .unet_3d_vsr import UNet3DVSRModel, vsr_config_from_2d

__all__ = ["UNet3DConditionModel", "UNet3DConditionOutput", "UNet3DVSRModel", "config_from_2d", "vsr_config_from_2d"]
