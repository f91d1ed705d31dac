"""What the custom resources of deploy/k8s must hold, for the kinds kubernetes-validate lacks.

kubernetes-validate bundles the schemas of Kubernetes' own kinds only. The components' kinds
(KEDA, the Prometheus Operator, Istio) are checked here against the fields their CRDs require
and the types their controllers reject: a cut-down of each CRD's OpenAPI schema, enough to
catch a wrong apiVersion, a missing required field or a number where a string must be. Each
schema is written from the CRD of the version docs/deploy.md names (KEDA 2.x, Prometheus
Operator v1, Istio >= 1.22).
"""

from __future__ import annotations

from typing import Any

import jsonschema

Schema = dict[str, Any]

_STRING = {"type": "string"}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}
_LABELS = {"type": "object", "additionalProperties": _STRING}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _LABELS},
}


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _LABELS},
    "minProperties": 1,
}

#: (apiVersion, kind) -> the schema a rendered object of that kind must meet.
CRD_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("keda.sh/v1alpha1", "ScaledObject"): _resource(
        "keda.sh/v1alpha1",
        "ScaledObject",
        {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "name": _STRING,
                        # The container a TriggerAuthentication's `env` entries are read from.
                        "envSourceContainerName": _STRING,
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": _STRING,
                            "name": _STRING,
                            # KEDA's CRD: map[string]string; a bare number is refused.
                            "metadata": {"type": "object", "additionalProperties": _STRING},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": _STRING, "kind": _STRING},
                            },
                        },
                    },
                },
            },
        },
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _resource(
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": _STRING,
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "additionalProperties": _STRING,
                    },
                },
            },
        },
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "jobLabel": _STRING,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": _STRING,
                            "path": _STRING,
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "tlsConfig": {"type": "object", "additionalProperties": True},
                            "relabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": _STRING,
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "properties": {
                                        "alert": _STRING,
                                        "record": _STRING,
                                        "expr": _STRING,
                                        "for": _DURATION,
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
    ("security.istio.io/v1", "PeerAuthentication"): _resource(
        "security.istio.io/v1",
        "PeerAuthentication",
        {
            "type": "object",
            "properties": {
                "selector": _SELECTOR,
                "mtls": {
                    "type": "object",
                    "properties": {"mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]}},
                },
            },
        },
    ),
    ("security.istio.io/v1", "AuthorizationPolicy"): _resource(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        {
            "type": "object",
            "properties": {
                "selector": _SELECTOR,
                "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
                "rules": {"type": "array", "items": {"type": "object"}},
            },
        },
    ),
    ("networking.istio.io/v1", "Gateway"): _resource(
        "networking.istio.io/v1",
        "Gateway",
        {
            "type": "object",
            "required": ["servers"],
            "properties": {
                "selector": _LABELS,
                "servers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "hosts"],
                        "properties": {
                            "port": {
                                "type": "object",
                                "required": ["number", "protocol", "name"],
                                "properties": {"number": {"type": "integer"}},
                            },
                            "hosts": {"type": "array", "minItems": 1, "items": _STRING},
                        },
                    },
                },
            },
        },
    ),
    ("networking.istio.io/v1", "VirtualService"): _resource(
        "networking.istio.io/v1",
        "VirtualService",
        {
            "type": "object",
            "required": ["hosts"],
            "properties": {
                "hosts": {"type": "array", "minItems": 1, "items": _STRING},
                "gateways": {"type": "array", "items": _STRING},
                "http": {"type": "array", "items": {"type": "object", "required": ["route"]}},
            },
        },
    ),
}


def check_custom_resource(doc: dict[str, Any]) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``doc`` meets its kind's schema."""
    key = (doc["apiVersion"], doc["kind"])
    assert key in CRD_SCHEMAS, f"no schema for {key}: add one to tests/deploy/crd_schemas.py"
    jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
