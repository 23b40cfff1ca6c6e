# Container image targets, included by the Makefile. Both run podman with its
# state under build/container/ (see docker/test-container.sh).
#
#   make container-image   build the gateway and demo upstream images
#   make test-container    build them and check the gateway image end to end

.PHONY: test-container container-image

test-container: $(TEST_UPSTREAM)
	@docker/test-container.sh --upstream $(TEST_UPSTREAM)

container-image:
	@docker/test-container.sh --build-only
