#!/usr/bin/env python3
"""Adds a VLAN segment to the agent config inside the switchyard-config
ConfigMap read as JSON on stdin; prints the ConfigMap. Used by
control-plane.sh for SWITCHYARD_SEGMENTS=vlan.

usage: add-vlan-segment.py NAME VLAN SUBNET GATEWAY UPLINK
"""
import json
import sys

name, vlan, subnet, gateway, uplink = sys.argv[1:6]
cm = json.load(sys.stdin)
text = cm["data"]["agent.yaml"]
if not any(line.strip() == f"- name: {name}" for line in text.splitlines()):
    if "\nsegments:\n" not in text:
        sys.exit("agent.yaml has no segments: list")
    text = text.replace(
        "\nsegments:\n",
        "\nsegments:\n"
        f"  - name: {name}\n"
        "    kind: vlan\n"
        f"    vlan: {int(vlan)}\n"
        f"    subnet: {subnet}\n"
        f"    gateway: {gateway}\n"
        f"    uplink: {uplink}\n",
        1,
    )
cm["data"]["agent.yaml"] = text
for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
    cm["metadata"].pop(key, None)
json.dump(cm, sys.stdout)
