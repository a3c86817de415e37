"""A pod's /etc/resolv.conf, as the kubelet writes it (pkg/kubelet/network/dns): pure.

- ClusterFirst (the default; also ClusterFirstWithHostNet, lab pods have no host network):
  the cluster DNS Service, search `<ns>.svc.<zone> svc.<zone> <zone>` then the node's
  search domains, `options ndots:5`;
- Default: the node's resolv.conf (in the lab: the outside host's resolver);
- None: nothing but the pod's dnsConfig.
`dnsConfig` is then merged in: nameservers and searches appended without duplicates,
options replaced by name. At most 3 nameservers and 32 search domains are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.api.pod import DNS_DEFAULT, DNS_NONE, Pod

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
CLUSTER_OPTIONS = ["ndots:5"]


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # "name" or "name:value"

    def render(self) -> str:
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> "ResolvConf":
        out = cls()
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if parts[0] == "nameserver" and len(parts) > 1:
                out.nameservers.append(parts[1])
            elif parts[0] in ("search", "domain"):
                out.searches = parts[1:]
            elif parts[0] == "options":
                out.options += parts[1:]
        return out


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge_options(base: list[str], extra: list[tuple[str, str | None]]) -> list[str]:
    by_name = {opt.split(":", 1)[0]: opt for opt in base}
    for name, value in extra:
        by_name[name] = f"{name}:{value}" if value is not None else name
    return list(by_name.values())


def pod_resolv_conf(pod: Pod, cluster_dns: str, domain: str, node: ResolvConf) -> ResolvConf:
    policy = pod.spec.dns_policy or "ClusterFirst"
    if policy == DNS_NONE:
        conf = ResolvConf()
    elif policy == DNS_DEFAULT:
        conf = ResolvConf(list(node.nameservers), list(node.searches), list(node.options))
    else:
        ns = pod.namespace or "default"
        conf = ResolvConf([cluster_dns], [f"{ns}.svc.{domain}", f"svc.{domain}", domain] + node.searches,
                          list(CLUSTER_OPTIONS))
    cfg = pod.spec.dns_config
    if cfg is not None:
        conf.nameservers = _dedup(conf.nameservers + list(cfg.nameservers or []))
        conf.searches = _dedup(conf.searches + list(cfg.searches or []))
        conf.options = _merge_options(conf.options, [(o.name, o.value) for o in cfg.options or [] if o.name])
    conf.nameservers = conf.nameservers[:MAX_NAMESERVERS]
    conf.searches = conf.searches[:MAX_SEARCHES]
    return conf
