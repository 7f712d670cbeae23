#!/usr/bin/env bash
# Build a TGLC sector into a HEALPix-partitioned dataset (HDF5 and/or a HATS catalog). Edit the variables below, then run:
#     bash build_dataset.sh [extra build_parent_sample.py options, e.g. --demo or --mast-url URL]
# Relative paths below are relative to this script's folder, wherever it is run from.
# Needs tglc-builder installed in ${PYTHON} (e.g. python -m venv .venv && . .venv/bin/activate && pip install -e .).
# Exits non-zero when the build fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECTOR=23                                                  # TESS sector
TGLC_DATA_PATH="${here}/tglc_data"                         # listings, catalog, failure report
HDF5_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/MultimodalUniverse"   # the dataset
FITS_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/fits_lcs"            # downloaded FITS files
HATS_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/hats"                # the HATS collection
FORMAT=hdf5                                                # hdf5, hats or both
COLUMNS=seed                                               # seed, or all of TGLC's columns
N_PROCESSES=4                                              # worker processes
TINY=true                                                  # true: only the first 100 objects
PYTHON="${PYTHON:-python}"                                 # the interpreter with tglc-builder installed

# The packages first: without them Python's answer is a ModuleNotFoundError traceback.
if ! "${PYTHON}" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
        ("tglc_builder", "astropy", "h5py", "healpy", "numpy", "pyarrow")))' 2>/dev/null; then
    echo "error: ${PYTHON} cannot import tglc-builder (or is not found): activate the environment it is installed in," \
         "or install it: python3 -m venv .venv && . .venv/bin/activate && pip install -e \"${here}\"" >&2
    exit 2
fi
args=(-s "${SECTOR}" --tglc_data_path "${TGLC_DATA_PATH}" --hdf5_output_path "${HDF5_OUTPUT_PATH}"
      --fits_output_path "${FITS_OUTPUT_PATH}" --hats_output_path "${HATS_OUTPUT_PATH}" --format "${FORMAT}"
      --columns "${COLUMNS}" --n_processes "${N_PROCESSES}")
if [ "${TINY}" = true ]; then
    args+=(--tiny)
fi

exec "${PYTHON}" "${here}/build_parent_sample.py" "${args[@]}" "$@"
