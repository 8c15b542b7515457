# Shared by the launch scripts (sourced, not run): printing and running commands exactly.
#
# `run CMD ARGS...` prints the command as one shell line that pastes back to the same argv (plain
# words bare, anything else in single quotes) and runs it unless DRY_RUN=1.

quote_word() {  # one argument -> a shell word for it
  local word=$1 safe='^[A-Za-z0-9_./:=@,+%-]+$'
  if [[ "$word" =~ $safe ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

quote_line() {  # arguments -> one shell line
  local out="" word
  for word in "$@"; do
    out+="$(quote_word "$word") "
  done
  printf '%s' "${out% }"
}

run() {  # prints the exact command and, unless DRY_RUN=1, runs it
  quote_line "$@"
  echo
  ((DRY_RUN)) || "$@"
}
