// main_rewards.cpp: the `rewards` program: scores JSON lines {"completion", "answer"} with every registered reward, one JSON line out per line in.
#include <cstdio>
#include <cstring>
#include <string>
#include "json.h"
#include "rewards.h"

static const char* kUsage =
    "usage: rewards [FILE.jsonl]\n"
    "Reads JSON lines {\"completion\": str, \"answer\": str} from FILE (or stdin when FILE is absent or -)\n"
    "and prints, for each, one JSON line with every reward of the registry and their weighted total:\n"
    "  {\"xmlcount\": ..., \"soft_format\": ..., \"strict_format\": ..., \"int\": ..., \"correctness\": ..., \"total\": ...}\n"
    "Numbers have 17 significant digits, so they read back as the exact doubles.\n";

// The string field `key` of one input line, or a GrpoError that names the line and shows the expected shape.
static const std::string& string_field(const JsonValue& line, const char* key, const std::string& where) {
    const char* shape = "; each line must be {\"completion\": \"...\", \"answer\": \"...\"}";
    if (!line.is_object())
        throw GrpoError(where + ": expected a JSON object, got " + line.type_name() + shape);
    const JsonValue* field = line.get(key);
    if (!field) throw GrpoError(where + ": missing field \"" + key + "\"" + shape);
    if (!field->is_string())
        throw GrpoError(where + ": field \"" + key + "\" is a " + field->type_name() + ", expected a string" + shape);
    return field->string;
}

int main(int argc, char** argv) {
    if (argc > 2 || (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fputs(kUsage, argc > 2 ? stderr : stdout);
        return argc > 2 ? 1 : 0;
    }
    try {
        JsonlReader reader(argc == 2 ? argv[1] : "-");
        const std::vector<RewardSpec>& registry = reward_registry();
        JsonValue line;
        while (reader.next(&line)) {
            const std::string& completion = string_field(line, "completion", reader.where());
            const std::string& answer = string_field(line, "answer", reader.where());
            RewardScores scores = compute_rewards(completion, answer);
            std::string out = "{";
            for (size_t i = 0; i < registry.size(); i++)
                out += json_quote(registry[i].name) + ": " + json_number(scores.values[i]) + ", ";
            out += "\"total\": " + json_number(scores.total) + "}\n";
            fputs(out.c_str(), stdout);
        }
        if (fflush(stdout) != 0) throw GrpoError("rewards: cannot write to stdout");
    } catch (const GrpoError& e) {
        fflush(stdout);
        fprintf(stderr, "rewards: %s\n", e.what());
        return 1;
    }
    return 0;
}
