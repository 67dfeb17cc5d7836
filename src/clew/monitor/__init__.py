"""Volume monitors: per event name, source and app version, hourly counts of accepted and
dead-lettered events compared with a seasonal baseline; alerts on the ``changes`` topic.

The stage that counts and judges is :class:`clew.stages.monitor.MonitorStage`; this package
holds the policy and judgement, the alerts, the database schema and the status reader."""

from clew.monitor.alerts import (
    ALERT_KIND,
    VolumeAlert,
    WebhookSender,
    WebhookUrlError,
    decode_alert,
)
from clew.monitor.status import MonitorStatus, SeriesState, read_status
from clew.monitor.volume import (
    ALL_VERSIONS,
    Assessment,
    HourCount,
    MonitorPolicy,
    MonitorPolicyError,
    SeriesHistory,
    SeriesKey,
    assess,
    assess_group,
)
from clew.topics import CHANGES_TOPIC

__all__ = [
    "ALERT_KIND",
    "ALL_VERSIONS",
    "CHANGES_TOPIC",
    "Assessment",
    "HourCount",
    "MonitorPolicy",
    "MonitorPolicyError",
    "MonitorStatus",
    "SeriesHistory",
    "SeriesKey",
    "SeriesState",
    "VolumeAlert",
    "WebhookSender",
    "WebhookUrlError",
    "assess",
    "assess_group",
    "decode_alert",
    "read_status",
]
