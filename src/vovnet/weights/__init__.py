from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, convert_file
from .convert import convert_state_dict, detect_layout, infer_config

__all__ = ["load_checkpoint", "read_checkpoint", "save_checkpoint", "convert_file", "convert_state_dict", "detect_layout", "infer_config"]
