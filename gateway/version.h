/* The gateway's version, also reported by --version and workshop_build_info. */
#ifndef GATEWAY_VERSION_H
#define GATEWAY_VERSION_H

#define GW_VERSION "0.1.0"
#define GW_NAME    "workshop-gateway"

#endif /* GATEWAY_VERSION_H */
