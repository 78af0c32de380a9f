# Sourced by bench scripts: nginx_backend_conf DIR PORT writes DIR/nginx.conf,
# a one-worker nginx answering every request with the 64-byte body peers.sh uses.
nginx_backend_conf() {
    local d=$1 port=$2
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<NGX
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft;
  uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { default_type text/plain; return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\\n"; }
  }
}
NGX
}
