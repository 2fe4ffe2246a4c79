# node-gyp path for the main addon alone (`npx node-gyp rebuild`); CMakeLists.txt builds everything,
# gvmd's FUSE module (gvm_fuse.node, in build/Release/fuse/) included.
{
  "targets": [
    {
      "target_name": "gvm",
      "sources": ["<!@(ls -1 native/*.cc | grep -v '/fuse_')"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "include"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wextra"]
    }
  ]
}
