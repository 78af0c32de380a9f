#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skiff: not yet\n");
    return 1;
}
