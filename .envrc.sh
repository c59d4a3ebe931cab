. /work/venv/bin/activate
export PYTHONPATH=/work/wt-svcpath/src
cd /work/wt-svcpath
