"""The KubeRay fields this project's manifests use (ray.io/v1), as strict pydantic models.

Written from KubeRay's CRDs for RayCluster, RayJob and RayService and the core/v1 pod fields the
manifests set. Strict like ``kubectl apply --validate=strict``: an unknown key, a wrong type (no
``"4"`` where the CRD has an integer, no ``4`` where it has a string) or a missing required field
is an error. A field KubeRay has but no manifest here sets yet is unknown too: add it to its
model, with the CRD's type, when a manifest needs it. Required CRD fields the API server
defaults (a worker group's ``minReplicas`` and ``maxReplicas``) are optional, as for kubectl.
Enumerations are the values KubeRay and Kubernetes document; the CRD leaves some as plain strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator

# Kubernetes' resource.Quantity, as the CRDs spell it (x-kubernetes-int-or-string plus this pattern).
_QUANTITY = re.compile(
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)


def _quantity(value: object) -> int | str:
    """An integer or a quantity string ("500m", "16Gi"); a float such as 0.5 is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        return value
    raise ValueError(f"expected a quantity (an integer or a string like '500m' or '16Gi'), got {value!r}")


Quantity = Annotated[int | str, PlainValidator(_quantity)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]  # a non-negative int32
Port = Annotated[int, Field(ge=1, le=65535)]
StringMap = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# core/v1: the parts of a pod template the manifests use.


class KeyRef(_Strict):
    """One key of a Secret (``secretKeyRef``) or a ConfigMap (``configMapKeyRef``)."""

    name: str
    key: str
    optional: bool | None = None


class EnvVarSource(_Strict):
    secretKeyRef: KeyRef | None = None
    configMapKeyRef: KeyRef | None = None


class EnvVar(_Strict):
    name: str
    value: str | None = None
    valueFrom: EnvVarSource | None = None


class Resources(_Strict):
    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class ContainerPort(_Strict):
    containerPort: Port
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class VolumeMount(_Strict):
    name: str
    mountPath: str
    readOnly: bool | None = None
    subPath: str | None = None


class Container(_Strict):
    """A container; ``image`` is required (a pod without one is rejected, though the CRD allows it)."""

    name: str
    image: str
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    resources: Resources | None = None
    ports: list[ContainerPort] | None = None
    volumeMounts: list[VolumeMount] | None = None


class EmptyDir(_Strict):
    medium: Literal["", "Memory"] | None = None
    sizeLimit: Quantity | None = None


class PersistentVolumeClaimSource(_Strict):
    claimName: str
    readOnly: bool | None = None


class Volume(_Strict):
    name: str
    emptyDir: EmptyDir | None = None
    persistentVolumeClaim: PersistentVolumeClaimSource | None = None


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class PodSpec(_Strict):
    containers: Annotated[list[Container], Field(min_length=1)]
    volumes: list[Volume] | None = None
    tolerations: list[Toleration] | None = None


class PodMeta(_Strict):
    labels: StringMap | None = None
    annotations: StringMap | None = None


class PodTemplate(_Strict):
    metadata: PodMeta | None = None
    spec: PodSpec


# ray.io/v1


class AutoscalerOptions(_Strict):
    version: Literal["v1", "v2"] | None = None
    idleTimeoutSeconds: Count | None = None
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] | None = None


class HeadGroupSpec(_Strict):
    rayStartParams: StringMap | None = None  # `ray start` flags; every value is a string
    template: PodTemplate


class WorkerGroupSpec(_Strict):
    groupName: str
    replicas: Count | None = None
    minReplicas: Count | None = None
    maxReplicas: Count | None = None
    rayStartParams: StringMap | None = None
    template: PodTemplate


class RayClusterSpec(_Strict):
    """A RayCluster's spec; also a RayService's ``rayClusterConfig`` and a RayJob's ``rayClusterSpec``."""

    rayVersion: str | None = None
    enableInTreeAutoscaling: bool | None = None
    autoscalerOptions: AutoscalerOptions | None = None
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] | None = None


class RayJobSpec(_Strict):
    """A RayJob: ``entrypoint`` on the cluster ``clusterSelector`` names or on its own ``rayClusterSpec``."""

    entrypoint: str
    clusterSelector: StringMap | None = None
    rayClusterSpec: RayClusterSpec | None = None
    runtimeEnvYAML: str | None = None
    submissionMode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"] | None = None
    ttlSecondsAfterFinished: Count | None = None
    activeDeadlineSeconds: Count | None = None
    backoffLimit: Count | None = None

    @field_validator("runtimeEnvYAML")
    @classmethod
    def _a_runtime_env(cls, text: str | None) -> str | None:
        """KubeRay passes it to Ray as the job's runtime_env, which must be a mapping."""
        try:
            parsed = yaml.safe_load(text) if text is not None else {}
        except yaml.YAMLError as err:
            raise ValueError(f"not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(parsed, dict):
            # pydantic reports a ValueError (not a TypeError) as a validation error
            raise ValueError(f"must be a YAML mapping (a runtime_env), got {type(parsed).__name__}")  # noqa: TRY004
        return text


class UpgradeStrategy(_Strict):
    type: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] | None = None


class RayServiceSpec(_Strict):
    """A RayService; ``serveConfigV2`` is a Serve config as a string (checked by k8s/serve_config.py)."""

    serveConfigV2: str | None = None
    rayClusterConfig: RayClusterSpec
    upgradeStrategy: UpgradeStrategy | None = None


class ObjectMeta(_Strict):
    name: str
    namespace: str | None = None
    labels: StringMap | None = None
    annotations: StringMap | None = None


class _Manifest(_Strict):
    apiVersion: Literal["ray.io/v1"]
    metadata: ObjectMeta


class RayCluster(_Manifest):
    kind: Literal["RayCluster"]
    spec: RayClusterSpec


class RayJob(_Manifest):
    kind: Literal["RayJob"]
    spec: RayJobSpec


class RayService(_Manifest):
    kind: Literal["RayService"]
    spec: RayServiceSpec


KINDS: dict[str, type[_Manifest]] = {"RayCluster": RayCluster, "RayJob": RayJob, "RayService": RayService}
