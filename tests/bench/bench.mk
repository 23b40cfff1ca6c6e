# Proxy benchmarks, included by the Makefile.
#
#   make bench-proxy           the gateway against nginx and HAProxy, quick
#   ROUNDS=5 DURATION=10 QUIET_WAIT=20 QUIET_MAX=15 RETRIES=1 make bench-proxy
#                              the settings of the run BENCHMARKS.md quotes
#   make bench-proxy-profile   callgrind, strace -c and perf on the gateway
#   make bench-stream          the gateway's memory while large bodies stream
#                              to slow clients
#
# Both install nginx, haproxy and wrk when missing (apt-get, as root) and
# write under $(B)/bench/proxy.

.PHONY: bench-proxy bench-proxy-profile bench-stream

bench-proxy: all
	tests/bench/bench-proxy.sh $(B)

bench-proxy-profile: all
	tests/bench/proxy/profile.sh $(B)

bench-stream: all
	tests/bench/bench-stream.sh $(B)
