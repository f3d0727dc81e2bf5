"""The training node: proves what it is (AMD SEV-SNP attestation), gets its data key, trains, reports.

Evidence comes from one :class:`~vigil.training_node.evidence.Evidence` provider per platform, all
producing the same bundle (the 1184-byte SEV-SNP report of :mod:`~vigil.training_node.snp` and the
VCEK → ASK → ARK certificate chain), so the attestation service verifies a laptop's software TEE, a bare
SEV-SNP guest (:mod:`~vigil.training_node.sev_guest`) and an Azure confidential VM
(:mod:`~vigil.training_node.azure_cvm`) with one code path, and holds an MAA token to the same
:class:`~vigil.training_node.claims.AttestationPolicy` as a raw report.
"""
