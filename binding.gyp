{
  "targets": [
    {
      "target_name": "arrow_shm",
      "sources": ["native/arrow_shm.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
