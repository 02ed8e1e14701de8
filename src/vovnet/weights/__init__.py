from .checkpoint import convert_file, load_checkpoint, read_checkpoint, save_checkpoint
from .convert import convert_state_dict, detect_layout, infer_config

__all__ = ["load_checkpoint", "read_checkpoint", "save_checkpoint", "convert_file", "convert_state_dict", "detect_layout", "infer_config"]
