"""Service.proxied reads the fields directly (it is asked 20,000 times a sync at 10,000
Services): the same answer as kube-proxy's rule, spelled out through the helpers, for every
combination of type, clusterIP and skip labels."""
from itertools import product

from controlplane.api.meta import ObjectMeta
from controlplane.api.service import (CLUSTER_IP, EXTERNAL_NAME, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
                                      LOAD_BALANCER, NODE_PORT, Service, ServiceSpec)


def _rule(svc: Service) -> bool:
    """The rule as it was written: through type, is_headless and labels."""
    if svc.type == EXTERNAL_NAME or not svc.spec.cluster_ip or svc.is_headless:
        return False
    return LABEL_SERVICE_PROXY_NAME not in svc.labels and LABEL_HEADLESS not in svc.labels


TYPES = (None, "", CLUSTER_IP, NODE_PORT, LOAD_BALANCER, EXTERNAL_NAME)
CLUSTER_IPS = (None, "", "None", "10.96.0.10", "none")
LABELS = (None, {}, {"app": "web"}, {LABEL_SERVICE_PROXY_NAME: "other"}, {LABEL_HEADLESS: ""},
          {LABEL_SERVICE_PROXY_NAME: "", LABEL_HEADLESS: "", "app": "web"})


def test_proxied_matches_the_rule_for_every_combination():
    seen = set()
    for type_, cluster_ip, labels in product(TYPES, CLUSTER_IPS, LABELS):
        svc = Service(metadata=ObjectMeta(name="s", namespace="ns", labels=labels),
                      spec=ServiceSpec(type=type_, cluster_ip=cluster_ip))
        assert svc.proxied is _rule(svc), (type_, cluster_ip, labels)
        seen.add(svc.proxied)
    assert seen == {True, False}


def test_view_policies_read_unset_as_cluster():
    """ServiceView's traffic-policy flags compare the field to Local (unset or empty: Cluster)."""
    from controlplane.api.service import POLICY_CLUSTER, POLICY_LOCAL
    from controlplane.controllers.service_view import ServiceView
    for internal, external in product((None, "", POLICY_CLUSTER, POLICY_LOCAL, "local"), repeat=2):
        view = ServiceView(Service(spec=ServiceSpec(internal_traffic_policy=internal,
                                                    external_traffic_policy=external)), ())
        assert view.internal_policy_local is ((internal or POLICY_CLUSTER) == "Local"), internal
        assert view.external_policy_local is ((external or POLICY_CLUSTER) == "Local"), external
