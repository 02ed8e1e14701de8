"""Training and evaluating detectors and instance segmenters: data wiring, metrics, prediction output.
The networks are :mod:`vovnet.models.detection`."""

from .draw import draw_detections
from .metrics import DetectionMetrics
from .predict import predict_coco_results, predict_files, prediction_record
from .task import DetectionTask

__all__ = ["draw_detections", "prediction_record", "DetectionMetrics", "predict_files", "predict_coco_results", "DetectionTask"]
