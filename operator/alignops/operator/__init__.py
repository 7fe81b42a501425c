"""The kopf operator: reconciles AlignmentJobs into batch/v1 Jobs, stage by stage.

Never imports torch (tested): the operator image is slim.
"""
