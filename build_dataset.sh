#!/usr/bin/env bash
# Build a TGLC sector into a HEALPix-partitioned dataset (HDF5 and/or a HATS catalog). Edit the variables below, then run:
#     bash build_dataset.sh [extra build_parent_sample.py options, e.g. --demo or --mast-url URL]
# Exits non-zero when the build fails.
set -euo pipefail

SECTOR=23                                                  # TESS sector
TGLC_DATA_PATH=./tglc_data                                 # listings, catalog, failure report
HDF5_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/MultimodalUniverse"   # the dataset
FITS_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/fits_lcs"            # downloaded FITS files
HATS_OUTPUT_PATH="${TGLC_DATA_PATH}/s$(printf '%04d' "${SECTOR}")/hats"                # the HATS collection
FORMAT=hdf5                                                # hdf5, hats or both
COLUMNS=seed                                               # seed, or all of TGLC's columns
N_PROCESSES=4                                              # worker processes
TINY=true                                                  # true: only the first 100 objects
PYTHON="${PYTHON:-python}"                                 # the interpreter with tglc-builder installed

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
args=(-s "${SECTOR}" --tglc_data_path "${TGLC_DATA_PATH}" --hdf5_output_path "${HDF5_OUTPUT_PATH}"
      --fits_output_path "${FITS_OUTPUT_PATH}" --hats_output_path "${HATS_OUTPUT_PATH}" --format "${FORMAT}"
      --columns "${COLUMNS}" --n_processes "${N_PROCESSES}")
if [ "${TINY}" = true ]; then
    args+=(--tiny)
fi

exec "${PYTHON}" "${here}/build_parent_sample.py" "${args[@]}" "$@"
