# node-gyp path for the addon alone (`npx node-gyp rebuild`); CMakeLists.txt builds everything.
{
  "targets": [
    {
      "target_name": "gvm",
      "sources": ["<!@(ls -1 native/*.cc)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "include", "<!@(pkg-config --cflags-only-I fuse3 | sed s/-I//g)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wextra"]
    }
  ]
}
