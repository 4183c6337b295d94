from .unet_3d import UNet3DConditionModel, UNet3DConditionOutput, config_from_2d

__all__ = ["UNet3DConditionModel", "UNet3DConditionOutput", "config_from_2d"]
