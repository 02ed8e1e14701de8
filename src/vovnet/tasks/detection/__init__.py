"""Training and evaluating detectors and instance segmenters: data wiring, metrics, prediction output.
The networks are :mod:`vovnet.models.detection`."""

from .draw import draw_detections, prediction_record
from .metrics import DetectionMetrics
from .predict import predict_files
from .task import DetectionTask

__all__ = ["draw_detections", "prediction_record", "DetectionMetrics", "predict_files", "DetectionTask"]
