"""The operator package: what runs on the Ansible controller and operators' machines.

It renders and validates the KMS key policy, verifies attestation documents and
carries the ``nitro-wallet`` CLI. It may import ``enclave_app`` (protocol modules)
and ``parent_app``; neither of them imports it, and it is never in the enclave image.
"""
