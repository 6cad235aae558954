/* A small NVML probe for the image test on a real GPU: loads libnvidia-ml.so.1 the way any
 * program does (dlopen by SONAME, so from the image's library folder), then prints where it
 * came from, the driver version and each GPU's name. Exit 1 on any NVML error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>

typedef int (*init_fn)(void);
typedef int (*count_fn)(unsigned int *);
typedef int (*handle_fn)(unsigned int, void **);
typedef int (*name_fn)(void *, char *, unsigned int);
typedef int (*version_fn)(char *, unsigned int);
typedef const char *(*error_fn)(int);

int main(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "nvml-probe: %s\n", dlerror());
        return 1;
    }
    struct link_map *map = NULL;
    if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map)
        printf("loaded: %s\n", map->l_name);
    init_fn init = (init_fn)dlsym(lib, "nvmlInit_v2");
    count_fn count = (count_fn)dlsym(lib, "nvmlDeviceGetCount_v2");
    handle_fn handle = (handle_fn)dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    name_fn name = (name_fn)dlsym(lib, "nvmlDeviceGetName");
    version_fn version = (version_fn)dlsym(lib, "nvmlSystemGetDriverVersion");
    error_fn error = (error_fn)dlsym(lib, "nvmlErrorString");
    if (!init || !count || !handle || !name || !version || !error) {
        fprintf(stderr, "nvml-probe: missing NVML symbols\n");
        return 1;
    }
    int rc = init();
    if (rc != 0) {
        fprintf(stderr, "nvml-probe: nvmlInit: %s\n", error(rc));
        return 1;
    }
    char buf[96];
    if ((rc = version(buf, sizeof buf)) != 0) {
        fprintf(stderr, "nvml-probe: driver version: %s\n", error(rc));
        return 1;
    }
    printf("driver: %s\n", buf);
    unsigned int n = 0;
    if ((rc = count(&n)) != 0) {
        fprintf(stderr, "nvml-probe: device count: %s\n", error(rc));
        return 1;
    }
    for (unsigned int i = 0; i < n; i++) {
        void *dev = NULL;
        if ((rc = handle(i, &dev)) != 0 || (rc = name(dev, buf, sizeof buf)) != 0) {
            fprintf(stderr, "nvml-probe: device %u: %s\n", i, error(rc));
            return 1;
        }
        printf("gpu %u: %s\n", i, buf);
    }
    return 0;
}
