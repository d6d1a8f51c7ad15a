"""llsmflow: deskew → deconvolve → stitch → archive (OME-Zarr) → track → provenance, for one LLSM dataset."""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from llsmflow.hpc.containers import resolve_images
from llsmflow.provenance.record import scrub
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
# Snakemake records each job's image reference in .snakemake/metadata: never with credentials in it. Apptainer
# does not take them from the reference anyway (APPTAINER_DOCKER_USERNAME/_PASSWORD, docs/containers.md).
_with_credentials = sorted(k for k, v in CONTAINERS.items() if v and scrub(v) != v)
if _with_credentials and DeploymentMethod.APPTAINER in _deployment:
    raise WorkflowError(
        f"llsmflow: config containers.{_with_credentials[0]} holds credentials (user:password@); expected "
        "a reference without them, and the registry login in APPTAINER_DOCKER_USERNAME and "
        "APPTAINER_DOCKER_PASSWORD (docs/containers.md)"
    )
CONTAINERS = {k: scrub(v) if v else v for k, v in CONTAINERS.items()}
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
