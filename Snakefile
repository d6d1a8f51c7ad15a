"""llsmflow: deskew → deconvolve → stitch → archive (OME-Zarr) → track → provenance, for one LLSM dataset."""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from llsmflow.hpc.containers import resolve_images
from llsmflow.errors import LlsmflowError

min_version("9.0")


configfile: "config/config.yaml"


# Apptainer images, pinned by digest (config `containers`, docs/containers.md). They are used only with
# --software-deployment-method apptainer (profiles/slurm-apptainer); unset, no rule runs in a container.
# Local SIF files are hashed once, by the main Snakemake process, and only when the run uses Apptainer.
_deployment = getattr(workflow.deployment_settings, "deployment_method", None) or ()
_verify = workflow.is_main_process and DeploymentMethod.APPTAINER in _deployment
try:
    CONTAINERS = resolve_images(
        config.get("containers"),
        (config.get("deconvolution") or {}).get("backend", "cpu"),
        verify_local=_verify,
    )
except LlsmflowError as error:
    raise WorkflowError(f"llsmflow: {error}") from None
# dask-jobqueue submits its workers with the host's sbatch and Python: neither exists inside the images
if (
    DeploymentMethod.APPTAINER in _deployment
    and (config.get("dask") or {}).get("cluster", "local") == "slurm"
):
    raise WorkflowError(
        "llsmflow: config dask.cluster is 'slurm', which cannot run inside Apptainer containers "
        "(no sbatch, no host Python there); expected dask.cluster: local with the slurm-apptainer profile"
    )


container: CONTAINERS["cpu"]


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/deskew.smk"
include: "workflow/rules/deconvolve.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/archive.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        RESULTS / "provenance" / "run-record.json",
        RESULTS / "provenance" / "ro-crate-metadata.json",
