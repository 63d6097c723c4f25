"""FlowMo as a session hook for tokentrim-server (hook ``flowmo``)."""

from flowmo_plugin.hook import FlowMoHook, StepRecord
from flowmo_plugin.loss import motion_variance

__all__ = ["FlowMoHook", "StepRecord", "motion_variance"]
